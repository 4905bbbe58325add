"""Jobs: the stages after assembly wired together (``stages``), driven by threads inside
``dicomnode serve`` (``executor``), and the people's controls (``control``, ``cli``).

The stages themselves live with their concern: routing in :mod:`dicomnode.rules.router`, the
run in :mod:`dicomnode.run.worker`, delivery in :mod:`dicomnode.dispatcher.queue`, health in
:mod:`dicomnode.health`, retention in :mod:`dicomnode.retention`, webhooks in
:mod:`dicomnode.webhooks`; states in :mod:`dicomnode.store.jobs`.
"""
