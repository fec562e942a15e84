# certrail services image (one image, the service is chosen by the command:
# `certrail serve gateway|issuer|deployer|auditor`, `certrail emca-sim serve ...`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY emca_sim ./emca_sim
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/certrail --create-home certrail \
    && install -d -o certrail -g certrail /var/lib/certrail/var /var/lib/certrail/var/emca-sim
# var/ (relative to the working directory) holds what a service keeps on disk: the deployer's
# and the auditor's keys, the simulator's CA; docker-compose.yml mounts volumes there, which
# take this ownership when first created.
COPY --from=build /install /usr/local
USER certrail
WORKDIR /var/lib/certrail
ENTRYPOINT ["certrail"]
CMD ["--help"]
