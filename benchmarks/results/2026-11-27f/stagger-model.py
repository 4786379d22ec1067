import random
N=60000; W=5.0
rng=random.Random(1)
c=[rng.uniform(0,W) for _ in range(N)]; u=[rng.uniform(0.2,1.0) for _ in range(N)]
def peak(ret):
    bins=[0]*60
    for t in ret: bins[min(59,int(t/0.25))]+=1
    return max(bins)/0.25/N*10000
best=[]
for a in [0.1,0.15,0.2,0.25,0.3,0.4]:
  for p in [0.5,0.75,1,1.25,1.5,2]:
    best.append((peak([ci+ui*5*(a+(1-a)*(ci/W)**p) for ci,ui in zip(c,u)]),a,p))
best.sort(); print(best[:8])
# min delay of 1s kept: R >= 5 → no change. R>=2.5 (min 0.5s)
for a in [0.2,0.3,0.5]:
    print("a",a,"p1", peak([ci+ui*5*(a+(1-a)*(ci/W)) for ci,ui in zip(c,u)]))
