/** Index of the largest logit (greedy decoding); the first one on ties, like torch.argmax. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}
