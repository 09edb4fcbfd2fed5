"""Stage 9: active-learning curation — which logged production samples are worth labelling.

Under a labelling budget of K images, curation picks from the prediction log
(`flywheel.monitoring.prediction_log`) the images the model is least sure of, spread over
the kinds of image it sees, and exports them as a Label Studio labelling queue
(`flywheel.labeling`).

Informativeness (higher = more worth a label), pure functions on `(N, K)`
class probabilities or `(M, N, K)` committee probabilities:

* `score_least_confidence` — 1 − p(top class);
* `score_margin` — 1 − (p(top) − p(second)): small margins are confusions
  between two classes;
* `score_entropy` — Shannon entropy of the prediction (nats);
* query-by-committee — the M most recent registered versions of the model
  re-score the logged images (each loaded from the registry as serving loads
  it: the exported pt2 program, never a pickle) and their disagreement is the
  score: `score_consensus_kl` (mean KL divergence of each member from the
  consensus, McCallum & Nigam 1998) or `score_vote_entropy` (entropy of the
  members' votes, Dagan & Engelson 1995);
* `random` — no score: the baseline every strategy must beat.

Diversity (`select_diverse`): the top `budget × prefilter` candidates by score
are clustered into `budget` groups with k-means (weighted by score) and the
most informative image of each group is taken — the "diverse mini-batch"
recipe of Zhdanov (2019) — so a batch is not K copies of one confusing kind of
image. The space is the logged embedding (L2-normalised: cosine geometry)
when every candidate was served by one model version; when the window spans
versions, whose embeddings are not comparable, it is the standardised summary
features instead.

Modules: `strategies` (the scores), `selection` (top, random, diverse),
`candidates` (the window of the log, the diversity space), `committee`
(re-scoring by registered versions), `queue` (Label Studio tasks), `curate`
(`curate_batch`, the stage).
"""

from flywheel.curation.candidates import FRAME_COLUMNS, Candidates, diversity_space, load_candidates
from flywheel.curation.committee import CommitteeMember, load_committee, score_images
from flywheel.curation.curate import CurationResult, curate_batch, parse_since
from flywheel.curation.queue import build_tasks, image_url, new_batch_id
from flywheel.curation.selection import rank_by_score, select_diverse, select_random, select_top
from flywheel.curation.strategies import (
    PROBABILITY_TOLERANCE,
    STRATEGIES,
    CurationError,
    check_probabilities,
    score_committee,
    score_consensus_kl,
    score_entropy,
    score_least_confidence,
    score_margin,
    score_uncertainty,
    score_vote_entropy,
)

__all__ = [
    "FRAME_COLUMNS",
    "PROBABILITY_TOLERANCE",
    "STRATEGIES",
    "Candidates",
    "CommitteeMember",
    "CurationError",
    "CurationResult",
    "build_tasks",
    "check_probabilities",
    "curate_batch",
    "diversity_space",
    "image_url",
    "load_candidates",
    "load_committee",
    "new_batch_id",
    "parse_since",
    "rank_by_score",
    "score_committee",
    "score_consensus_kl",
    "score_entropy",
    "score_images",
    "score_least_confidence",
    "score_margin",
    "score_uncertainty",
    "score_vote_entropy",
    "select_diverse",
    "select_random",
    "select_top",
]
