# Image for every service; compose.yaml picks the service with `sovereign run <service>`.
FROM python:3.11-slim
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY contracts ./contracts
COPY services ./services
COPY sovereign ./sovereign
COPY policies ./policies
COPY catalogue ./catalogue
RUN uv sync --frozen --no-dev
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER 65534
CMD ["sovereign", "--help"]
