"""The edge front-end and the meta-models the back-end publishes for it
(docs/deployment.md, "Front-end and back-end"): ``versions`` (publish, pick up),
``frontend`` (adapt and serve), ``serve`` (local HTTP)."""
