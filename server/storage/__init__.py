"""Where vault objects live on the server: the per-user vault registry and quota accounting."""
