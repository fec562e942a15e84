# certrail services image (one image, the service is chosen by the command:
# `certrail serve gateway|issuer|deployer|auditor`, `certrail emca-sim serve ...`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY emca_sim ./emca_sim
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/certrail --create-home certrail
COPY --from=build /install /usr/local
USER certrail
WORKDIR /var/lib/certrail
ENTRYPOINT ["certrail"]
CMD ["--help"]
