# The local Kafka-protocol broker tansu (built by scripts/install-deps.sh) as a stand-in for
# Apache Kafka in the offline compose smoke test (compose.offline.yml).
ARG BASE
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
RUN mkdir -p /var/lib/kafka/data
EXPOSE 9092
ENTRYPOINT ["tansu"]
