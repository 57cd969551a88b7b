"""Sans-IO codecs: resource values (``values``), Tap APDU frames (``apdu``), encrypted frames (``secure_frame``)."""
