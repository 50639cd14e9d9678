"""STRIP (Gao et al. 2019): low prediction entropy under superimposition flags a trojaned input."""
import torch

from benchmark.api import Defense, DefenseOutput, to_float



def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of softmax(logits) per row."""
    logp = torch.log_softmax(logits.float(), 1)
    return -(logp.exp() * logp).sum(1) / torch.log(torch.tensor(2.0))


class STRIP(Defense):
    def superimpose(self, x: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) x (N, C, H, W) -> (B * N, C, H, W), input-major."""
        s = x[:, None] + backgrounds[None]
        s = s.clamp(0, 1) if self.params["blend"] == "add" else s / 2
        return s.flatten(0, 1)

    def run(self, model, clean, ctx):
        n = self.params["n"]
        g = ctx.generator(11)
        idx = torch.randint(0, len(clean), (n,), generator=g)
        backgrounds = to_float(clean.images[idx], ctx.device)
        model.to(ctx.device).eval()

        @torch.no_grad()
        def scorer(x: torch.Tensor) -> torch.Tensor:
            out = []
            per = max(1, self.params["batch"] // n)  # inputs per forward pass
            for i in range(0, len(x), per):
                chunk = x[i:i + per].to(ctx.device)
                h = entropy(model(self.superimpose(chunk, backgrounds))).view(len(chunk), n).mean(1)
                out.append(-h)
            return torch.cat(out).cpu()
        return DefenseOutput(input_scorer=scorer, info={"n": n, "blend": self.params["blend"]})
