"""The kubectl plugin (``kubectl savepoint``); it needs neither librados nor the operator's modules."""
