"""flywheel serving: the registry's production model behind a BentoML service.

`serving.service` (the service; `bentoml serve serving.service:FlywheelService`),
`serving.guard` and `serving.decoding` / `serving.multipart` (request checks),
`serving.raw_route` (`/predict_image`), `serving.predictions` (the answer),
`serving.batching` and `serving.hot_swap` (the served model), `serving.watcher`
and `serving.reload` (new versions, admin reloads), `serving.metrics`,
`serving.settings` (params.yaml), `serving.requirements` (the image's packages).
"""
