"""Built-in strategies. Each module is an ordinary plugin, registered like a third party's."""
