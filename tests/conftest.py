pytest_plugins = ["support.fixtures", "support.redis"]
