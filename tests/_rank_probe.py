"""One rank of instance/model/distributed.py, with Chronos's batch builder wrapped to note what
each batch holds (a test seam installed here, not in the code under test).

    torchrun --standalone --nproc_per_node=N tests/_rank_probe.py JOB.json
writes batches-rank{r}.json (one digest per batch drawn) and futures-rank{r}.json (per batch: the
future covariate values Chronos shows the model, and the series in the batch) beside JOB.json,
then exits as the rank did.
"""
import json
import os
import sys
from pathlib import Path

import chronos.chronos2.dataset as chronos_dataset
import torch

from instance.model import distributed

drawn = []
futures = []
build = chronos_dataset.Chronos2Dataset._build_batch


def noting(self, input_indices):
    batch = build(self, input_indices)
    drawn.append(round(float(torch.nan_to_num(batch["context"]).sum()), 3))
    futures.append([int(torch.isfinite(batch["future_covariates"]).sum()), len(input_indices)])
    return batch


chronos_dataset.Chronos2Dataset._build_batch = noting
code = distributed.main(sys.argv[1:])
(Path(sys.argv[1]).parent / f"batches-rank{os.environ['RANK']}.json").write_text(json.dumps(drawn))
(Path(sys.argv[1]).parent / f"futures-rank{os.environ['RANK']}.json").write_text(json.dumps(futures))
sys.exit(code)
