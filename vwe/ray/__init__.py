"""The Ray edges of vwe: turn a stage into a Ray Train / Data / Tune workload. Nothing else imports ray."""
