"""The built-in sandbox: a tiny synthetic world with a known gold reward (see :mod:`alignkit.sandbox.world`)."""
