"""The data mover run inside Jobs: ``python -m savepoint.mover``."""
