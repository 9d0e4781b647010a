"""sipswitch: an IP-PBX and SIP server (registrar, B2BUA, IVR-XML, trunks)."""

__version__ = "0.1.0"
