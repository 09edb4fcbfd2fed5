"""The formula-page service: detector → crops → recogniser behind one BentoML service.

`serving.pages.service` (the service; `bentoml serve serving.pages.service:PageService`),
`serving.pages.stages` (each stage's model kept current: the digits service's watcher,
batcher and hot swap), `serving.pages.reading` (one page through the pair, as
`flywheel.tasks.page_pipeline.PagePipeline` runs it), `serving.pages.routes` (`/read_page`,
`/readyz`). The HTTP contract is `flywheel.page_api`; the log `flywheel.monitoring.page_log`.
"""
