"""backdoor-arena: attack and defend neural networks against backdoors."""

__version__ = "0.1.0"
