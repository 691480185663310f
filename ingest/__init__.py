"""The webhook ingress: provider callbacks into calls.raw (`callstream ingress`)."""
