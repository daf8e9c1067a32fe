# One image for the API (`serve`), the worker (`worker`), the operator (`operator`) and
# the migrate Job (`migrate`), about 365 MB, for ClickHouse as a server:
#   docker build -t openanalytics:0.1.0 .
# The embedded variant adds the in-process ClickHouse (chdb, about 900 MB more) and so also
# runs `standalone`:
#   docker build --build-arg EXTRAS=embedded -t openanalytics:0.1.0-embedded .
# Without a registry for the base images: python -m tests.support.docker_engine build (README).

# The default country database (CC0, MaxMind format) from the npm registry, pinned as in
# scripts/fetch-geoip.
FROM docker.io/library/node:20-bookworm-slim AS geoip
WORKDIR /geoip
RUN npm pack --silent @ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719 \
 && tar xzf ./*.tgz && mv package/geo-whois-asn-country.mmdb country.mmdb

# The dependencies' list, read from pyproject.toml with the extras asked for (comma-separated;
# `embedded`: chdb, for `standalone`). The next stage depends on this list alone, not on the
# rest of pyproject.toml.
FROM docker.io/library/python:3.11-slim-bookworm AS requirements
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import sys, tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [name for name in sys.argv[1].split(",") if name]; \
print("\n".join(project["dependencies"] + [r for name in extras for r in project["optional-dependencies"][name]]))' \
      "$EXTRAS" > requirements.txt

# The dependencies from the lock (constraints.txt) into a virtualenv. pip runs from a venv of
# its own (--python): the image's venv has no pip, nothing runs it there. Bytecode compiled
# here: the root filesystem is read-only at run time.
FROM docker.io/library/python:3.11-slim-bookworm AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/pip && python -m venv --without-pip /opt/openanalytics
WORKDIR /src
COPY constraints.txt ./
COPY --from=requirements /src/requirements.txt ./
RUN /opt/pip/bin/pip --python /opt/openanalytics/bin/python install -c constraints.txt -r requirements.txt \
 && /opt/openanalytics/bin/python -m compileall -q /opt/openanalytics/lib

# The project alone, laid out as it goes into the venv: a change to the code is a small layer
# of the image, on top of the dependencies' unchanged one.
FROM deps AS build
COPY pyproject.toml README.md ./
COPY api ./api
COPY operator ./operator
RUN /opt/pip/bin/pip --python /opt/openanalytics/bin/python install --no-deps --no-compile --target /opt/project/site . \
 && mv /opt/project/site/bin /opt/project/bin \
 && PYTHONPATH=/opt/project/site /opt/pip/bin/pip --python /opt/openanalytics/bin/python check \
 && /opt/openanalytics/bin/python -m compileall -q --invalidation-mode unchecked-hash \
      -s /opt/project/site -p /opt/openanalytics/lib/python3.11/site-packages /opt/project/site

FROM docker.io/library/python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="OpenAnalytics" \
      org.opencontainers.image.description="Privacy-first web and product analytics: API, worker and operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# /var/lib/openanalytics: where `standalone` can keep its data on a volume (OA_DATA_DIR).
RUN groupadd --system --gid 10001 openanalytics \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin openanalytics \
 && install -d -o 10001 -g 10001 /var/lib/openanalytics
COPY --from=geoip /geoip/country.mmdb /usr/share/openanalytics/geoip/country.mmdb
COPY --from=deps /opt/openanalytics /opt/openanalytics
COPY --from=build /opt/project/site/ /opt/openanalytics/lib/python3.11/site-packages/
COPY --from=build /opt/project/bin/ /opt/openanalytics/bin/
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
