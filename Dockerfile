# One image for the API (`serve`), the worker (`worker`), the operator (`operator`) and
# the migrate Job (`migrate`). Build: docker build -t openanalytics:dev .

# The default country database (CC0, MaxMind format) from the npm registry, pinned as in
# scripts/fetch-geoip.
FROM docker.io/library/node:20-bookworm-slim AS geoip
WORKDIR /geoip
RUN npm pack --silent @ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719 \
 && tar xzf ./*.tgz && mv package/geo-whois-asn-country.mmdb country.mmdb

# Dependencies from the lock (constraints.txt) into a virtualenv, then the project itself.
FROM docker.io/library/python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/openanalytics
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY api ./api
COPY operator ./operator
# Bytecode compiled here: the root filesystem is read-only at run time.
RUN /opt/openanalytics/bin/pip install -c constraints.txt . \
 && /opt/openanalytics/bin/python -m compileall -q /opt/openanalytics/lib

FROM docker.io/library/python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="OpenAnalytics" \
      org.opencontainers.image.description="Privacy-first web and product analytics: API, worker and operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 openanalytics \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin openanalytics
COPY --from=build /opt/openanalytics /opt/openanalytics
COPY --from=geoip /geoip/country.mmdb /usr/share/openanalytics/geoip/country.mmdb
ENV PATH=/opt/openanalytics/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OA_HOST=0.0.0.0 \
    OA_DATA_DIR=/tmp/openanalytics \
    OA_GEOIP_PATH=/usr/share/openanalytics/geoip/country.mmdb
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["openanalytics"]
CMD ["serve"]
