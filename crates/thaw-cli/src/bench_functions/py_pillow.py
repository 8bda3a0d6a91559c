"""Benchmark function with a large library: image processing with Pillow
(after FunctionBench's image_processing): each invocation resizes, rotates,
blurs and PNG-encodes a 512 x 512 image made at init."""
import io

from PIL import Image, ImageFilter

IMAGE = Image.new("RGB", (512, 512))
IMAGE.putdata([((x * 7) % 256, (y * 3) % 256, (x ^ y) % 256) for y in range(512) for x in range(512)])


def handler(event, context):
    img = IMAGE.resize((256, 256)).rotate(90).filter(ImageFilter.GaussianBlur(2))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return {"png_bytes": out.tell(), "size": list(img.size)}
