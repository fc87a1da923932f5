"""Distribution: the only code that knows about ranks (collectives, coordinator, launch)."""
