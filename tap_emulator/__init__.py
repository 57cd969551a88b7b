"""tap-emulator: an emulator of an IoTize Tap (TapNLink) device, centred on LwM2M object 1025."""

__version__ = "0.1.0"
