"""fax-gateway: turns folders into fax machines through the iFax REST API."""

__version__ = "0.1.0"
