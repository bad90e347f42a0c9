from initcheck.rules.registry import APPROXIMATE, BACKWARD, FORWARD, Unsupported, load_all

__all__ = ["APPROXIMATE", "BACKWARD", "FORWARD", "Unsupported", "load_all"]
