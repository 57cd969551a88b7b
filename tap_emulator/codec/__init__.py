"""Sans-IO codecs: resource values (``values``), APDU frames (``apdu``), encrypted frames.

The encrypted-channel codec is ``secure_frame``.
"""
