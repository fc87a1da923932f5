# tru-dist on Ray with CUDA: the image cluster/cluster.yaml (ray up) and cluster/rayjob.yaml
# (KubeRay) run on every node.
#
#   make docker IMAGE=<registry>/tru-dist:0.1.0-gpu        # docker build -t $IMAGE .
#   make docker-push IMAGE=<registry>/tru-dist:0.1.0-gpu   # then name it in both cluster files
#
# Base: Ray's GPU image (CUDA, Python, Ray itself, non-root user `ray`), the Ray version of
# constraints.txt. Ray's images ship no PyTorch, so torch is installed first, as a CUDA build:
# PyPI's Linux x86_64 torch wheels are CUDA builds that bring their own CUDA runtime (only the
# node's NVIDIA driver must be recent enough); TORCH_INDEX_URL picks another build, e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
# Then the project is installed from pyproject.toml with the `ray` extra and the exact pins of
# constraints.txt — the dependency list lives in pyproject.toml only. `torch==` in the same
# call keeps pip from replacing the CUDA build (a local tag such as +cu128 satisfies it).
ARG RAY_VERSION=2.60.0
ARG PY_TAG=py311
FROM rayproject/ray:${RAY_VERSION}-${PY_TAG}-gpu

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV RAY_USAGE_STATS_ENABLED=0 \
    TQDM_DISABLE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /home/ray/tru-dist
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

COPY --chown=ray:users pyproject.toml README.md constraints.txt ./
COPY --chown=ray:users tru_dist ./tru_dist
RUN pip install -c constraints.txt "torch==${TORCH_VERSION}" ".[ray]" \
 && python -c "import ray, torch, tru_dist; from tru_dist.config import model_defaults; \
[model_defaults(m) for m in ('lightgcn', 'mgcn', 'miggt')]; \
print('tru-dist', tru_dist.__version__, 'ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"

# the job entry points (`ray job submit -- python jobs/...`, the RayJob's entrypoint) and the
# user-facing configs (sweeps, tuned unlearning settings) next to the installed package
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users cluster ./cluster
