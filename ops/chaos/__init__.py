"""The chaos suite: a batch under crashes, restarts, outages and a hostile service, audited from outside."""
