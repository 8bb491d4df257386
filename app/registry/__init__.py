"""Model registries (MLflow) and sources fetched by URL, reached only through the outbound guard."""
