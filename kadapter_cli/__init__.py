"""kadapter: K-Adapter (Wang et al., Findings of ACL 2021) as a command-line toolkit and library."""

__version__ = "0.1.0"
