# check=experimental=all
# the base image
ARG BASE=
FROM $BASE AS one
FROM busybox AS two
ENV A=1 \

    B=2
# wrong
ARG X Y
FROM two AS three
RUN echo $A $B $X
WORKDIR /abs
WORKDIR rel
cmd ["a"]
CMD []
