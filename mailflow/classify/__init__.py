"""Replies understood: every reply gets one class from a fixed vocabulary (``classes``),
by the first matching rule (``rules``: the user's classify.ini, then the shipped set),
and ``mailflow classify`` says which rule matched (``command``)."""
