ARG BASE=busybox
ARG SECRET_TOKEN
from busybox as Builder
RUN echo $UNDEF
ENV API_KEY=x
ENV legacy value
LABEL lab value
CMD echo a
CMD echo b
ENTRYPOINT echo e
HEALTHCHECK CMD true
HEALTHCHECK CMD false
MAINTAINER me
WORKDIR rel
WORKDIR $HOME/x
EXPOSE 127.0.0.1:80:80/TCP 90/udp $PORT
COPY ignored.txt $DEST /x
ADD ignored.txt /y
USER $WHO
STOPSIGNAL $SIG
VOLUME $VOL /v
ARG PASSWORD=1
ARG A=$B
FROM Builder AS builder2
FROM busybox AS scratch
FROM busybox AS context
FROM --platform=$TARGETPLATFORM busybox AS t1
FROM --platform=linux/amd64 busybox AS t2
FROM $NOPE AS t3
FROM ${BASE} AS t4
RUN echo $PATH
FROM arm AS armstage
FROM t1
ENV X=1
RUN echo $X $Y
Run echo mixed
FROM busybox AS final
COPY --from=t1 ignored.txt /z
