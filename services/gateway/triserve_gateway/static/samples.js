// Built-in samples: each digit as pen strokes (polylines in a unit box, y down), drawn on the pad
// with the same brush as a person's drawing. Synthetic on purpose: no dataset image is shipped.

const ellipse = (cx, cy, rx, ry, n = 24) =>
  Array.from({ length: n + 1 }, (_, i) => {
    const a = (i / n) * 2 * Math.PI - Math.PI / 2;
    return [cx + rx * Math.cos(a), cy + ry * Math.sin(a)];
  });

export const DIGIT_STROKES = {
  0: [ellipse(0.5, 0.5, 0.36, 0.48)],
  1: [[[0.58, 0.0], [0.42, 1.0]]],
  2: [[[0.12, 0.22], [0.3, 0.04], [0.6, 0.0], [0.85, 0.16], [0.84, 0.4], [0.5, 0.7], [0.08, 1.0], [0.95, 0.98]]],
  3: [[[0.12, 0.1], [0.5, 0.0], [0.85, 0.14], [0.8, 0.38], [0.42, 0.5], [0.85, 0.62], [0.9, 0.86], [0.5, 1.0], [0.1, 0.9]]],
  4: [[[0.25, 0.0], [0.12, 0.58], [0.92, 0.58]], [[0.72, 0.12], [0.66, 1.0]]],
  5: [[[0.88, 0.02], [0.28, 0.02], [0.2, 0.45], [0.55, 0.38], [0.86, 0.56], [0.85, 0.82], [0.55, 1.0], [0.1, 0.92]]],
  6: [[[0.78, 0.0], [0.38, 0.28], [0.16, 0.68], [0.3, 0.98], [0.66, 0.98], [0.86, 0.76], [0.66, 0.52], [0.32, 0.55], [0.18, 0.72]]],
  7: [[[0.06, 0.04], [0.94, 0.04], [0.42, 1.0]]],
  8: [[[0.5, 0.5], [0.8, 0.3], [0.74, 0.05], [0.5, 0.0], [0.26, 0.05], [0.2, 0.3], [0.5, 0.5],
       [0.84, 0.72], [0.74, 0.97], [0.5, 1.0], [0.26, 0.97], [0.16, 0.72], [0.5, 0.5]]],
  9: [[[0.84, 0.3], [0.64, 0.02], [0.3, 0.05], [0.15, 0.3], [0.34, 0.5], [0.7, 0.45], [0.84, 0.3], [0.74, 0.66], [0.62, 1.0]]],
};

/** Draws `strokes` into the pad's 2D context, in the central box of the canvas (MNIST-like margins). */
export function drawStrokes(ctx, strokes, size) {
  const box = { x: size * 0.3, y: size * 0.17, w: size * 0.4, h: size * 0.66 };
  for (const line of strokes) {
    ctx.beginPath();
    line.forEach(([u, v], i) => {
      const x = box.x + u * box.w;
      const y = box.y + v * box.h;
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}
