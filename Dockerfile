# Peregrine on an NVIDIA CUDA base image: build in the devel image, run in the
# runtime image. The default model is fetched at build time from PyPI.
#   docker build -t peregrine .
#   docker run --gpus all -p 8080:8080 peregrine
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential libmicrohttpd-dev libcjson-dev libsentencepiece-dev libpcre2-dev \
        libcriterion-dev python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" MARCH=-march=x86-64-v3 SM="80 90" build/peregrine \
 && PEREGRINE_CACHE=/models PYTHON=python3 PIP_BREAK_SYSTEM_PACKAGES=1 bash scripts/fetch-model.sh

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libmicrohttpd12t64 libcjson1 libsentencepiece0 libpcre2-8-0 libcublas-13-0 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/peregrine /usr/local/bin/peregrine
COPY --from=build /src/configs /usr/local/share/peregrine/configs
COPY --from=build /models /models
ENV PEREGRINE_CACHE=/models
EXPOSE 8080
ENTRYPOINT ["peregrine", "serve", "--host", "0.0.0.0", "--port", "8080"]
