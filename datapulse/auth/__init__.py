"""Authentication: who is calling. Verifiers turn an ``Authorization`` header into a Principal."""

from datapulse.auth.verifier import BearerVerifier, ChainVerifier, Principal, Verifier

__all__ = ["BearerVerifier", "ChainVerifier", "Principal", "Verifier"]
