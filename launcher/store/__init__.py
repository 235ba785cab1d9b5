"""The secrets side: names, input parsing, sealing, master keys, set files."""
