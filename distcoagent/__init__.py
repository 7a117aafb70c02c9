"""distcoagent."""
