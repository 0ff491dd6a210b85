"""``glmdeploy sandbox``: a local, faithful stand-in for the Vast.ai REST API and the engines it runs.

- ``catalogue``: the seeded offer catalogue and search semantics;
- ``world``: instances, lifecycle, logs and the cost ledger;
- ``faults``: the fault-injection spec and bookkeeping;
- ``app``: the Starlette app with Vast's paths, codes and error bodies;
- ``process``: running it in the foreground, in the background (sandbox.json), or in a test thread;
- ``engines``: the simulated inference engines an instance runs once it is ``running``.

Nothing is imported here, so ``import glmdeploy.sandbox.process`` stays cheap.
"""
