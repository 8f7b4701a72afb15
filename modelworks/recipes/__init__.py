"""The code that imports PyTorch: run only in job child processes (`python -m
modelworks.recipes.<name> …`), never imported by the server or a worker. Each recipe reports
progress through `modelworks.jobs.report` on its standard output."""
