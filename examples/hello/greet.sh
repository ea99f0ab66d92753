#!/bin/sh
echo "hello from $(hostname), built by rdock"
