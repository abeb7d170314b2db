from batchgen.cli.main import entry

entry()
