"""The provider simulator: fake vpbx and mobile_agent APIs that follow their seed documents,
with injectable faults, and traffic at an ingress (webhooks, call registrations).

`simulation.Simulation` puts the two APIs on one aiohttp app (`/vpbx`, `/mobile_agent`) and
knows their ground truth; `traffic` sends callbacks and registrations; `truth` reconciles what
reached calls.events. `callstream simulate` serves it all; `callstream up --demo` runs the
pipeline against it. Everything is deterministic from a seed: the calls, their content, their
outcomes; only the timing of the requests decides which one a fault hits. The scenario makes
the hard cases (`simulation.Scenario`): a long tail of call durations, vpbx records listed late,
callbacks late and out of order, backfills of reports days old. Time is an injected clock
(`foundation.clock`), so that tests run hours of it in seconds.
"""
