"""Networks, training and hyper-parameter tuning."""
