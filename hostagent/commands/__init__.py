"""The CLI's verbs, one module per group; ``hostagent.cli`` only parses arguments and calls them."""
