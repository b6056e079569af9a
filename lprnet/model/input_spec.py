"""LPRNet's input and output contract, without torch: the image size, the pixel normalisation and the logit columns.

What a deployment needs to feed the network and read its output (the deploy manifest writes these values out, see
lprnet/runtime/deploy.py), so that the ONNX Runtime and TVM runtimes, and the image loader, need not import the
network's torch code. Does not load images (see data.py) or define the network (see network.py).
"""

INPUT_HEIGHT, INPUT_WIDTH = 24, 94
SEQUENCE_LENGTH = 18  # logit columns produced for a 94-pixel-wide input
# The LPRNet_Pytorch normalisation of BGR uint8 pixels: (x - 127.5) / 128.
PIXEL_MEAN, PIXEL_SCALE = 127.5, 0.0078125
