"""The provider simulator: fake vpbx and mobile_agent APIs that follow their seed documents,
with injectable faults, and traffic at an ingress (webhooks, call registrations).

`simulation.Simulation` puts the two APIs on one aiohttp app (`/vpbx`, `/mobile_agent`) and
knows their ground truth; `traffic` sends callbacks and registrations; `truth` reconciles what
reached calls.events. `callstream simulate` serves it all; `callstream up --demo` runs the
pipeline against it. Everything is deterministic from a seed: the calls, their content, their
outcomes; only the timing of the requests decides which one a fault hits.
"""
