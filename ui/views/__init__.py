"""One module per page family: catalog, search, policy, auth."""
