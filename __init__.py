"""edgetvm: compile ONNX and TFLite models with TVM for Raspberry-Pi-class boards, deploy and measure them."""

__version__ = "0.1.0"
